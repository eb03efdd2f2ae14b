"""Where configuration comes from, apart from what it means (as envoyproxy/ratelimit keeps
`provider/` apart from `config/`): `files` (folders, files, mounted ConfigMaps) and
`kubernetes` (the cluster's resources, listed and watched). Both feed the same parser,
`extproc.config.kinds`, and the same `extproc.config.assemble`."""
