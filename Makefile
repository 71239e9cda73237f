# The two commands of the README. Both install what is missing first.
.PHONY: setup test demo demo-vm bench lint unit soak clean

setup:
	@scripts/setup.sh

test: setup
	.venv/bin/tox run -e lint,unit,netns,fullkernel

# natively on any kernel (Open vSwitch, netdev datapath); demo-vm: native VLANs in the VM
demo: setup
	.venv/bin/csboot-sim demo nets/ovs.yaml

demo-vm: setup
	.venv/bin/csboot-sim demo nets/basic.yaml

# ours and Mininet's pingall back to back at 10/50/100/200 hosts; rewrites docs/benchmarks.md
bench:
	@scripts/setup.sh --bench
	.venv/bin/python bench/compare.py --repeat 3 --write docs/benchmarks.md

lint: setup
	.venv/bin/tox run -e lint

unit: setup
	.venv/bin/tox run -e unit

# Not in CI: 100 agents, a new version every 3 s for 10 minutes; RSS flat, nothing lost.
soak: setup
	.venv/bin/python bench/soak.py --agents 100 --minutes 10 --every 3

clean:
	rm -rf .tox .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
