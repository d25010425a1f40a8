//! Statement rewrites for scatter-gather (reserved for the gather work; nothing here yet).
