//! placeholder replaced by the indexer helper
