"""The OpenAI wire format: request schema, prompting, response format and streaming, used by the
serving node, verifier nodes and audits. Imports nothing above it."""
