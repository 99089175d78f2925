-- Runs once, on the first start of the compose Postgres: Durapay's own role and database.
CREATE ROLE durapay LOGIN PASSWORD 'durapay';
CREATE DATABASE durapay OWNER durapay;
