"""Helpers of the LearnGN Registration module, kept apart from ``LearnGNSlicer.py``.

Slicer loads every ``.py`` file placed directly in a module folder as a module of its own, so
everything except the module, widget, logic and test classes lives in this package.  The code
here needs MRML (``slicer``) but not the application (no Qt, no ``slicer.app``), so it runs and is
tested headless with the ``slicer-core`` package.
"""
