output "url" {
  description = "Public HTTPS URL of the API (OpenAI clients use <url>v1 as baseURL)."
  value       = aws_lambda_function_url.api.function_url
}

output "function_name" {
  description = "Name of the API Lambda function."
  value       = aws_lambda_function.api.function_name
}

output "security_group_id" {
  description = "Security group of the API's network interfaces."
  value       = aws_security_group.api.id
}

output "log_group_name" {
  description = "CloudWatch log group of the API function."
  value       = aws_cloudwatch_log_group.api.name
}
