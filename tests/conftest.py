"""Test-wide setup.

``TRITON_INTERPRET=1`` must be in the environment before anything imports triton (Triton reads
it when kernels are decorated), so it is set here, at the top of the root conftest, before any
test module is collected. ``setdefault`` lets a GPU host run with ``TRITON_INTERPRET=0``.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
