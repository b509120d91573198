output "primary_endpoint" {
  description = "Primary endpoint address (TLS on port 6379)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "port" {
  description = "Redis port."
  value       = aws_elasticache_replication_group.this.port
}

output "client_security_group_id" {
  description = "Security group to attach to Redis clients."
  value       = aws_security_group.clients.id
}
