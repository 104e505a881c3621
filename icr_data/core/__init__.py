"""The contract's executors: local and Ray."""
