"""MegaScale-Infer (SIGCOMM'25): attention/expert disaggregation with ping-pong micro-batches.

The folder name has a hyphen (the artifact's name); import its modules with
``importlib.import_module("artifacts.megascale-infer.<module>")``.
"""
