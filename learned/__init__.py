"""Learned operators and networks (trainable twins of the classical operators)."""
