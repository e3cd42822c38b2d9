//! An in-memory network of replicas driving the link logic (see below).
