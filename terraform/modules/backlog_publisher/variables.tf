variable "name" {
  type        = string
  description = "Name prefix; the function is <name>-backlog-publisher."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the function's network interfaces."
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
  description = "The Lambda image (infra/docker/api.Dockerfile, target lambda); the publisher is its lambda/autoscaler.handler."
}

variable "redis_url" {
  type        = string
  sensitive   = true
  description = "rediss:// URL with the auth token."
}

variable "models" {
  type        = list(string)
  description = "Model ids whose queues (ppsd-generate-<id>) the worker group serves."
}

variable "asg_name" {
  type        = string
  description = "Worker Auto Scaling group (metric dimension, DescribeAutoScalingGroups, wake from zero)."
}

variable "asg_arn" {
  type        = string
  description = "ARN of the worker group; the only group whose capacity the publisher may set."
}

variable "metric_namespace" {
  type        = string
  description = "CloudWatch namespace of the scaling metric."
}

variable "metric_name" {
  type        = string
  description = "Name of the scaling metric."
}

variable "target_backlog_per_worker" {
  type        = number
  description = "Same target as the tracking policy; used to size the group when waking it from zero."
}

variable "max_batch" {
  type        = number
  description = "Sequences each worker runs at once (the workers' PPSD_MAX_BATCH): the metric divides the load by in-service workers x max_batch."
}

variable "schedule_expression" {
  type        = string
  description = "EventBridge schedule of the publisher, e.g. rate(1 minute)."
}

variable "log_retention_days" {
  type        = number
  description = "CloudWatch Logs retention."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
}
