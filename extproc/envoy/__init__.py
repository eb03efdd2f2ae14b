"""The ext_proc adapter: Envoy's messages in, the admission core's decisions out as replies.

`wire` reads and builds the protobuf; `service` holds one exchange's state through its
messages and asks the core (`extproc.admission`) to decide; `replies` are the answers a
decision becomes (the budget 429, the store-unavailable 503).
"""
