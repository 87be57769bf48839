"""The library: pure, importable functions and modules; no flags, no printing."""

from lib.core import xla_cpu as _xla_cpu

_xla_cpu.configure()
