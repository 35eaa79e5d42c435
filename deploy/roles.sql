-- Once per cluster, as the master user (RDS) or a superuser, in the service's database (sixshop).
-- Roles: `migrator` owns the schema and runs `sixshop-agent migrate` once per deploy; `app` is what the
-- replicas log in as: it reads and writes rows, and can create nothing.
--   create role migrator login password '...';
--   create role app login password '...';
--   create database sixshop owner migrator;
revoke create on schema public from public;
grant usage on schema public to app;
-- pgvector needs a superuser (RDS: rds_superuser) to install; the migration only checks it is there
create extension if not exists vector;
-- every table and sequence the migration role creates (sql/, LangGraph's checkpoint tables) is the app's
-- to read and write; functions are executable by everyone by default
alter default privileges for role migrator in schema public grant select, insert, update, delete on tables to app;
alter default privileges for role migrator in schema public grant usage, select on sequences to app;
