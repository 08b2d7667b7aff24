"""The package version, in one place (read by setup.py and edd_ext.__init__)."""
__version__ = "0.1.0"
