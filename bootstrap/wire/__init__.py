"""What travels between hosts and the fleet tools, typed and bounded.

Imports nothing of ours but :mod:`bootstrap.errors`: the agent builds these documents and
the fleet tools parse them, without either importing the other (or the host engine).
"""
