"""Test helpers for code built on recsampled (needs pytest and scipy, the test dependencies).

- :class:`SamplerContract`: the contract tests every candidate sampler passes; subclass it and
  define ``make_sampler()`` to test a sampler of your own
  (``class TestMySampler(SamplerContract): ...`` in a pytest module).
- :func:`inclusion_statistics`: inclusion counts of many ``unique=True`` samples in one graph.
"""

from recsampled.testing.samplers import SamplerContract, inclusion_statistics

__all__ = ["SamplerContract", "inclusion_statistics"]
