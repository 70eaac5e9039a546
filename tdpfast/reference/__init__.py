"""Pure-Python reference models (executable specifications and test oracles) for tdpfast."""
