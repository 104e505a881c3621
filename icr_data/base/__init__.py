"""Foundations: errors, files, the console, logs, languages, configs."""
