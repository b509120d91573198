output "api_url" {
  description = "Public API URL; OpenAI clients use baseURL = <api_url>v1."
  value       = module.api.url
}

output "first_admin_key" {
  description = "How to get the first admin key of the admin API (/admin/, ppsd admin, /console)."
  value = join(" ", [
    "With TF_VAR_api_admin_keys set, the admin keys are those.",
    "Otherwise the API creates one on its first start and prints it once:",
    "curl -s ${module.api.url}healthz; aws logs filter-log-events --log-group-name ${module.api.log_group_name}",
    "--filter-pattern '\"created admin key\"' --query 'events[].message' --output text",
  ])
}

output "console_url" {
  description = "The web console (playground; operator views with an admin key)."
  value       = "${module.api.url}console"
}

output "model_bucket" {
  description = "Bucket to publish model packages to (ppsd publish <package> s3://<bucket>/<prefix>)."
  value       = module.model_bucket.bucket_name
}

output "redis_endpoint" {
  description = "Primary endpoint of the BullMQ Redis (TLS, AUTH)."
  value       = module.redis.primary_endpoint
}

output "redis_url_parameter" {
  description = "SSM SecureString parameter holding the full Redis URL."
  value       = aws_ssm_parameter.redis_url.name
}

output "worker_asg_name" {
  description = "GPU worker Auto Scaling group."
  value       = module.gpu_workers.asg_name
}

output "worker_devices" {
  description = "PPSD_DEVICES each worker gets (one pipeline stage per GPU)."
  value       = module.gpu_workers.devices
}

output "worker_drain_hook" {
  description = "Termination lifecycle hook completed by the drain watcher."
  value       = module.gpu_workers.drain_hook_name
}

output "worker_log_group" {
  description = "CloudWatch log group of the worker and drain watcher containers."
  value       = module.gpu_workers.log_group_name
}

output "backlog_publisher_function" {
  description = "Lambda function that publishes BacklogPerWorker every minute."
  value       = module.backlog_publisher.function_name
}

output "ecr_repositories" {
  description = "ECR repository URLs by image (empty when create_ecr_repositories is false)."
  value       = { for k, r in aws_ecr_repository.this : k => r.repository_url }
}
