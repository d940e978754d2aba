"""RAFT (Teed & Deng, ECCV 2020) built from the scaffold's parts: learned features as the data
term, an all-pairs correlation read by lookup, a tied-weight GRU as the step operator."""
