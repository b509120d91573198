output "function_name" {
  description = "Name of the backlog publisher function."
  value       = aws_lambda_function.publisher.function_name
}
