//! The bus and the session registry: in-process and RabbitMQ + Redis.
