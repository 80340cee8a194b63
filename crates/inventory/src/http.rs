//! The inventory's REST routes (under `/api/v1`).
