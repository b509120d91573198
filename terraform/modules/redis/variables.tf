variable "name" {
  type        = string
  description = "Replication group id and name prefix (lowercase letters, digits and hyphens, at most 40 characters)."
}

variable "vpc_id" {
  type        = string
  description = "VPC the cache lives in."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the cache nodes."
}

variable "node_type" {
  type        = string
  description = "ElastiCache node type."
}

variable "engine_version" {
  type        = string
  description = "Redis engine version (7.x: BullMQ needs Redis >= 6.2)."
}

variable "parameter_group_family" {
  type        = string
  description = "Parameter group family that matches engine_version, e.g. redis7."
}

variable "replicas" {
  type        = number
  description = "Read replicas next to the primary; with at least one, Multi-AZ automatic failover is on."
}

variable "snapshot_retention_days" {
  type        = number
  description = "Days of daily snapshots to keep (0 disables snapshots). ElastiCache has no AOF on Redis 7; snapshots plus a replica are the durability story."
}

variable "auth_token" {
  type        = string
  sensitive   = true
  description = "Redis AUTH token (16-128 characters). Clients connect with rediss://:<token>@host:6379."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
}
