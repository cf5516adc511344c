"""Policies shared by every adapter that talks to something that can fail.

This package imports nothing else of the project, so any package may use it.
"""
