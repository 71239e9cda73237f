"""cloudstack-bootstrap: desired state for Apache CloudStack KVM/LXC hypervisor hosts."""

__version__ = "0.1.0"
__all__ = ["__version__"]
