"""The processes of a real deployment: serve, join, the node's warm worker, the SuperNode wrapper, the apps."""
