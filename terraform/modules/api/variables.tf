variable "name" {
  type        = string
  description = "Name prefix; the function is <name>-api."
}

variable "vpc_id" {
  type        = string
  description = "VPC the function's network interfaces live in."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the function's network interfaces."
}

variable "redis_client_security_group_id" {
  type        = string
  description = "Security group that Redis admits."
}

variable "image_uri" {
  type        = string
  description = "ECR image built from infra/docker/api.Dockerfile, target lambda."
}

variable "redis_url" {
  type        = string
  sensitive   = true
  description = "rediss:// URL with the auth token."
}

variable "models" {
  type        = list(string)
  description = "Model ids the API accepts (PPSD_MODELS)."
}

variable "bootstrap_keys" {
  type        = string
  sensitive   = true
  description = "PPSD_BOOTSTRAP_KEYS, tenant:key pairs accepted on first start."
}

variable "key_secret" {
  type        = string
  sensitive   = true
  description = "PPSD_KEY_SECRET, the HMAC key of stored API key hashes."
}

variable "admin_keys" {
  type        = string
  sensitive   = true
  description = "PPSD_ADMIN_KEYS, comma-separated admin keys; empty: one is created and logged once on first start."
}

variable "memory_mb" {
  type        = number
  description = "Function memory in MB (CPU scales with it)."
}

variable "timeout_seconds" {
  type        = number
  description = "Longest request, streams included (Lambda allows up to 900)."
}

variable "reserved_concurrency" {
  type        = number
  description = "Concurrent executions reserved for (and capping) the API; -1 leaves it unreserved. Every open stream holds one."
}

variable "cors_allow_origins" {
  type        = list(string)
  description = "Origins allowed by CORS on the function URL; empty disables CORS."
}

variable "log_retention_days" {
  type        = number
  description = "CloudWatch Logs retention."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
}
