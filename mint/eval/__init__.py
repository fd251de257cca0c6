"""Evaluations of our own (forgetting); HEST-Bench and eva live in mint.bench and mint.eva."""
