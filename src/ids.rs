//! Collision-free 64-bit ids for new shard keys.
