//! moto in server mode (SQS, Secrets Manager, DynamoDB) as a child process on 127.0.0.1.
