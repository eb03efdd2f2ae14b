"""Configuration: Kubernetes-style YAML in, one frozen `Config` out (see `loader`)."""

from extproc.config.errors import ConfigError, Problem
from extproc.config.loader import load_config
from extproc.config.model import Config

__all__ = ["Config", "ConfigError", "Problem", "load_config"]
