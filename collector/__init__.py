"""Precondition Watch: why did that 412 happen?"""

__version__ = "0.1.0"
