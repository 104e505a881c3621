"""The data plane of pairing."""
