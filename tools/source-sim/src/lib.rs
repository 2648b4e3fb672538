//! The third-party API simulator.
