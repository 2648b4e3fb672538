//! Integration tests: DynamoDB Local, moto and the simulator.
