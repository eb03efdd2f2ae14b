"""Configuration: Kubernetes-style resources in, one frozen `Config` out.

`documents` reads text (or API objects) into a node tree with lines, `fields` reports on
it, `kinds/` holds one module per kind, `assemble` puts resources together, and
`sources/` says where they come from (files, or the Kubernetes API).
"""

from extproc.config.errors import ConfigError, Problem
from extproc.config.model import Config
from extproc.config.sources.files import load_config

__all__ = ["Config", "ConfigError", "Problem", "load_config"]
