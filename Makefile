# The two commands of the README. Both install what is missing first.
.PHONY: setup test demo lint unit clean

setup:
	@scripts/setup.sh

test: setup
	.venv/bin/tox run -e lint,unit,netns,fullkernel

demo: setup
	.venv/bin/csboot-sim demo nets/basic.yaml

lint: setup
	.venv/bin/tox run -e lint

unit: setup
	.venv/bin/tox run -e unit

clean:
	rm -rf .tox .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
