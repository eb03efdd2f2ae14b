"""The sidecar's own gRPC API (`extproc.budgets.v1.BudgetAdmin`): `service` serves it;
`proto` holds the stubs generated from protos/ (`make protos`)."""
