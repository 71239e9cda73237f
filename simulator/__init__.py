"""The namespace simulator: a fleet of virtual hypervisors around a real broker and switch."""
