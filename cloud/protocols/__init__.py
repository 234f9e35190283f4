"""Treatment protocols: validate, sign, store, publish as retained desired state, and track convergence."""
