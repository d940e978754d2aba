"""Hand-tuned operators and the named classical methods built from them."""
