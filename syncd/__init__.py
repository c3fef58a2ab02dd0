"""syncd: keeps a shared folder of ad images in sync with Facebook ad accounts."""

__version__ = "0.1.0"
