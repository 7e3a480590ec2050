"""Task environments: Python venvs (uv), container images, and the build cache."""
