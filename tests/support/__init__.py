"""What the tests share: the one set of stub nodes, event recorders, and paths of the data in tests/data/."""
