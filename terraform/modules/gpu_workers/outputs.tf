output "asg_name" {
  description = "Name of the worker Auto Scaling group."
  value       = aws_autoscaling_group.worker.name
}

output "asg_arn" {
  description = "ARN of the worker Auto Scaling group."
  value       = aws_autoscaling_group.worker.arn
}

output "drain_hook_name" {
  description = "Termination lifecycle hook the drain watcher completes."
  value       = aws_autoscaling_lifecycle_hook.drain.name
}

output "launch_hook_name" {
  description = "Launch lifecycle hook the bootstrap completes."
  value       = local.launch_hook_name
}

output "metric_namespace" {
  description = "CloudWatch namespace of the scaling metric."
  value       = local.metric_namespace
}

output "metric_name" {
  description = "Scaling metric name."
  value       = local.metric_name
}

output "devices" {
  description = "PPSD_DEVICES given to each worker."
  value       = local.devices
}

output "role_name" {
  description = "IAM role of the worker instances."
  value       = aws_iam_role.worker.name
}

output "log_group_name" {
  description = "CloudWatch log group of the worker containers."
  value       = aws_cloudwatch_log_group.worker.name
}
