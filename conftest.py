"""Repository-level pytest configuration for SegAudit's own test suite.

``pytester`` drives the plugin in isolated runs (tests/test_plugin*.py).  The SegAudit
plugin itself is loaded through its ``pytest11`` entry point, as for any user.
"""

pytest_plugins = ["pytester"]
