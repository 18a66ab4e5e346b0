"""Measuring control: attribute scorers, grids of mixes, sweeps, metrics and reports."""
