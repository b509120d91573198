// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the assertions compare Terraform interpolations literally
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_METRIC_NAME, DEFAULT_NAMESPACE } from '@ppsd/autoscaler';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type Block,
  blocks,
  loadModules,
  parseFile,
  resolveLocal,
  resourcesOfType,
  strings,
  TF_DIR,
  type TfModule,
  tfFiles,
} from './terraform';

/**
 * Ingress rules allowed to admit the whole internet, by "<module dir>/<resource type>.<name>".
 * Deliberately empty: the public entry point is the API's Lambda function URL
 * (modules/api aws_lambda_function_url.api), an AWS-managed HTTPS endpoint with no security group.
 */
const PUBLIC_ENTRY_INGRESS: string[] = [];
const OPEN = ['0.0.0.0/0', '::/0'];

const SECRET_NAME = /token|password|secret|key/i;

let modules: Map<string, TfModule>;
const mod = (dir: string): TfModule => {
  const m = modules.get(dir);
  if (!m) throw new Error(`no terraform module at terraform/${dir}`);
  return m;
};

beforeAll(async () => {
  modules = await loadModules();
});

describe('terraform configuration parses', () => {
  it('every .tf file parses with hcl2json', async () => {
    const files = tfFiles();
    expect(files.length).toBeGreaterThanOrEqual(20);
    for (const f of files) await expect(parseFile(f), f).resolves.toBeTypeOf('object');
  });

  it('has the root configuration and the modules it composes', () => {
    expect([...modules.keys()].sort()).toEqual(
      [
        '.',
        'modules/api',
        'modules/backlog_publisher',
        'modules/gpu_workers',
        'modules/model_bucket',
        'modules/network',
        'modules/redis',
      ].sort(),
    );
    const root = mod('.');
    expect(Object.keys(root.module).sort()).toEqual(
      ['api', 'backlog_publisher', 'gpu_workers', 'model_bucket', 'network', 'redis'].sort(),
    );
    const aws = root.terraform.flatMap((t) => t.required_providers ?? []).find((p) => p.aws)?.aws;
    expect(aws).toMatchObject({ source: 'hashicorp/aws' });
    expect(aws.version).toMatch(/^~> 5\./);
  });
});

describe('variables and outputs', () => {
  it('every variable has a type and a description', () => {
    for (const m of modules.values()) {
      for (const [name, v] of Object.entries(m.variable)) {
        expect(v.type, `${m.dir} var.${name} type`).toBeTruthy();
        expect(
          typeof v.description === 'string' && v.description.length > 10,
          `${m.dir} var.${name} description`,
        ).toBe(true);
      }
    }
  });

  it('every output has a description', () => {
    for (const m of modules.values()) {
      for (const [name, o] of Object.entries(m.output)) {
        expect(o.description, `${m.dir} output.${name}`).toBeTruthy();
      }
    }
  });

  it('no secret variable has a default, and secrets are marked sensitive', () => {
    const secrets: string[] = [];
    for (const m of modules.values()) {
      for (const [name, v] of Object.entries(m.variable)) {
        if (v.sensitive === true || SECRET_NAME.test(name)) {
          secrets.push(`${m.dir}:${name}`);
          expect('default' in v, `${m.dir} var.${name} must not have a default`).toBe(false);
          expect(v.sensitive, `${m.dir} var.${name} must be sensitive`).toBe(true);
        }
      }
    }
    expect(secrets).toEqual(
      expect.arrayContaining([
        '.:redis_auth_token',
        '.:api_bootstrap_keys',
        '.:api_key_secret',
        '.:api_admin_keys',
        'modules/api:key_secret',
        'modules/api:admin_keys',
        'modules/redis:auth_token',
        'modules/api:redis_url',
        'modules/api:bootstrap_keys',
        'modules/backlog_publisher:redis_url',
      ]),
    );
  });

  it('each module call passes exactly the variables the module declares, and all required ones', () => {
    const root = mod('.');
    const meta = new Set(['source', 'version', 'count', 'for_each', 'depends_on', 'providers']);
    for (const [name, call] of Object.entries(root.module)) {
      const target = mod((call.source as string).replace(/^\.\//, ''));
      const args = Object.keys(call).filter((k) => !meta.has(k));
      for (const a of args) expect(Object.keys(target.variable), `module.${name} argument ${a}`).toContain(a);
      for (const [v, body] of Object.entries(target.variable)) {
        if (!('default' in body)) expect(args, `module.${name} must set ${v}`).toContain(v);
      }
    }
  });

  it('every var., local. and module output reference resolves', () => {
    const root = mod('.');
    for (const m of modules.values()) {
      const text = strings([m.resource, m.data, m.output, m.module, m.locals, m.variable]).join('\n');
      for (const [, v] of text.matchAll(/\bvar\.([A-Za-z0-9_]+)/g)) {
        expect(Object.keys(m.variable), `${m.dir} uses var.${v}`).toContain(v);
      }
      for (const [, l] of text.matchAll(/\blocal\.([A-Za-z0-9_]+)/g)) {
        expect(Object.keys(m.locals), `${m.dir} uses local.${l}`).toContain(l);
      }
      if (m.dir !== '.') continue;
      for (const [, name, out] of text.matchAll(/\bmodule\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)/g)) {
        const target = mod((root.module[name].source as string).replace(/^\.\//, ''));
        expect(Object.keys(target.output), `module.${name}.${out}`).toContain(out);
      }
    }
  });

  it('the example tfvars sets every required non-secret root variable and no secret', async () => {
    const example = await parseFile(join(TF_DIR, 'terraform.tfvars.example'));
    const root = mod('.');
    for (const [name, v] of Object.entries(root.variable)) {
      if (v.sensitive) expect(example, `${name} must not be in the example`).not.toHaveProperty(name);
      else if (!('default' in v)) expect(example, `example sets ${name}`).toHaveProperty(name);
    }
    for (const k of Object.keys(example)) expect(Object.keys(root.variable)).toContain(k);
  });
});

describe('network exposure', () => {
  function openIngress(): string[] {
    const found: string[] = [];
    for (const [dir, name, sg] of resourcesOfType(modules, 'aws_security_group')) {
      for (const rule of blocks(sg, 'ingress')) {
        const cidrs = strings([rule.cidr_blocks, rule.ipv6_cidr_blocks]);
        if (cidrs.some((c) => OPEN.includes(c))) found.push(`${dir}/aws_security_group.${name}`);
      }
    }
    for (const [dir, name, rule] of resourcesOfType(modules, 'aws_security_group_rule')) {
      if (
        rule.type === 'ingress' &&
        strings([rule.cidr_blocks, rule.ipv6_cidr_blocks]).some((c) => OPEN.includes(c))
      ) {
        found.push(`${dir}/aws_security_group_rule.${name}`);
      }
    }
    for (const [dir, name, rule] of resourcesOfType(modules, 'aws_vpc_security_group_ingress_rule')) {
      if (OPEN.includes(rule.cidr_ipv4) || OPEN.includes(rule.cidr_ipv6)) {
        found.push(`${dir}/aws_vpc_security_group_ingress_rule.${name}`);
      }
    }
    return found;
  }

  it('no security group admits 0.0.0.0/0 or ::/0 except the named public entry point', () => {
    expect(openIngress().filter((r) => !PUBLIC_ENTRY_INGRESS.includes(r))).toEqual([]);
  });

  it('the public entry point is the API function URL with response streaming', () => {
    const urls = resourcesOfType(modules, 'aws_lambda_function_url');
    expect(urls.map(([d, n]) => `${d}/${n}`)).toEqual(['modules/api/api']);
    expect(urls[0][2]).toMatchObject({ authorization_type: 'NONE', invoke_mode: 'RESPONSE_STREAM' });
    const perms = resourcesOfType(modules, 'aws_lambda_permission').filter(([, , p]) => p.principal === '*');
    expect(perms).toHaveLength(1);
    expect(perms[0][2]).toMatchObject({ action: 'lambda:InvokeFunctionUrl', function_url_auth_type: 'NONE' });
  });

  it('Redis admits only its client security group', () => {
    const redis = mod('modules/redis');
    const rules = Object.values(redis.resource.aws_vpc_security_group_ingress_rule ?? {});
    expect(rules).toHaveLength(1);
    expect(rules[0]).toMatchObject({ from_port: 6379, to_port: 6379 });
    expect(rules[0].referenced_security_group_id).toBe('${aws_security_group.clients.id}');
    for (const [dir, , fn] of resourcesOfType(modules, 'aws_lambda_function')) {
      expect(strings(fn.vpc_config), dir).toContain('${var.redis_client_security_group_id}');
    }
  });

  it('the VPC has private subnets across zones and an S3 gateway endpoint', () => {
    const net = mod('modules/network');
    expect(net.resource.aws_subnet.private.count).toBe('${var.az_count}');
    expect(net.resource.aws_subnet.private.map_public_ip_on_launch).not.toBe(true);
    expect(net.resource.aws_vpc_endpoint.s3).toMatchObject({ vpc_endpoint_type: 'Gateway' });
    expect(net.resource.aws_vpc_endpoint.s3.service_name).toMatch(/\.s3$/);
    expect(mod('.').variable.az_count.default).toBeGreaterThanOrEqual(2);
  });
});

describe('GPU worker pool', () => {
  let w: TfModule;
  beforeAll(() => {
    w = mod('modules/gpu_workers');
  });

  it('the worker role can only read the model bucket', () => {
    const doc = w.data.aws_iam_policy_document.worker;
    const statements = blocks(doc, 'statement');
    expect(statements.length).toBeGreaterThan(0);
    const s3Actions: string[] = [];
    for (const s of statements) {
      expect(s.effect ?? 'Allow').toBe('Allow');
      expect(s.not_actions).toBeUndefined();
      for (const a of s.actions as string[]) {
        expect(a.includes('*'), `wildcard action ${a}`).toBe(false);
        if (a.startsWith('s3:')) {
          s3Actions.push(a);
          expect(strings(s.resources).every((r) => r.startsWith('${var.model_bucket_arn}'))).toBe(true);
        }
      }
    }
    expect(s3Actions.sort()).toEqual(['s3:GetObject', 's3:ListBucket']);
    // The policy is the role's only policy: no managed policy attachments, no other inline policies.
    expect(w.resource.aws_iam_role_policy_attachment).toBeUndefined();
    expect(Object.keys(w.resource.aws_iam_role_policy)).toEqual(['worker']);
    expect(w.resource.aws_iam_role_policy.worker.policy).toBe('${data.aws_iam_policy_document.worker.json}');
    expect(mod('.').module.gpu_workers.model_bucket_arn).toBe('${module.model_bucket.bucket_arn}');
    // Its autoscaling permissions are scoped to its own group.
    const asg = statements.find((s) => (s.actions as string[]).includes('autoscaling:SetInstanceProtection'));
    expect(asg?.resources).toEqual(['${local.asg_arn}']);
  });

  it('launch template: GPU type from variables, IMDSv2, encrypted root, instance profile, bootstrap', () => {
    const lt = w.resource.aws_launch_template.worker;
    expect(lt.instance_type).toBe('${var.instance_type}');
    expect(lt.iam_instance_profile[0].arn).toBe('${aws_iam_instance_profile.worker.arn}');
    expect(lt.metadata_options[0]).toMatchObject({ http_tokens: 'required', http_endpoint: 'enabled' });
    expect(lt.block_device_mappings[0].ebs[0]).toMatchObject({ encrypted: true, volume_type: 'gp3' });
    expect(lt.user_data).toContain('local.user_data');
    expect(w.locals.devices).toContain('cuda:');
    expect(w.locals.user_data).toContain('templatefile(');
  });

  it('the group spans the subnets, has a warm pool and lets workers own their protection', () => {
    const asg = w.resource.aws_autoscaling_group.worker;
    expect(asg.vpc_zone_identifier).toBe('${var.subnet_ids}');
    expect(mod('.').module.gpu_workers.subnet_ids).toBe('${module.network.private_subnet_ids}');
    expect(asg.min_size).toBe('${local.group_min}');
    expect(w.locals.group_min).toContain('var.scale_to_zero ? 0');
    expect(asg.max_size).toBe('${var.max_size}');
    expect(asg.protect_from_scale_in).toBe(false);
    const pools = blocks(asg, 'warm_pool');
    expect(pools).toHaveLength(1);
    expect(pools[0]).toMatchObject({
      pool_state: '${var.warm_pool_state}',
      min_size: '${var.warm_pool_size}',
    });
    expect(pools[0].instance_reuse_policy).toBeDefined();
    expect(asg.lifecycle[0].ignore_changes).toContain('${desired_capacity}');
    expect(asg.instance_refresh[0].preferences[0].scale_in_protected_instances).toBe('Wait');
  });

  it('a termination lifecycle hook holds instances while they drain', () => {
    const hooks = [
      ...Object.values(w.resource.aws_autoscaling_lifecycle_hook ?? {}),
      ...blocks(w.resource.aws_autoscaling_group.worker, 'initial_lifecycle_hook'),
    ];
    const term = hooks.filter((h) => h.lifecycle_transition === 'autoscaling:EC2_INSTANCE_TERMINATING');
    expect(term).toHaveLength(1);
    expect(term[0].default_result).toBe('CONTINUE');
    expect(term[0].heartbeat_timeout).toBe('${var.drain_timeout_seconds + 120}');
    expect(term[0].name).toBe('${local.drain_hook_name}');
    // The drain watcher completes that same hook.
    expect(w.locals.drain_env).toMatchObject({
      PPSD_LIFECYCLE_HOOK_NAME: '${local.drain_hook_name}',
      PPSD_DRAIN_STOP: 'docker:ppsd-worker',
    });
    const launch = hooks.filter((h) => h.lifecycle_transition === 'autoscaling:EC2_INSTANCE_LAUNCHING');
    expect(launch).toHaveLength(1);
    expect(launch[0].name).toBe('${local.launch_hook_name}');
  });

  it('the scaling policy tracks the BacklogPerWorker metric the publisher puts', () => {
    const policies = Object.values(w.resource.aws_autoscaling_policy ?? {});
    expect(policies).toHaveLength(1);
    const p = policies[0];
    expect(p.policy_type).toBe('TargetTrackingScaling');
    const tt = p.target_tracking_configuration[0];
    expect(tt.target_value).toBe('${var.target_backlog_per_worker}');
    const metric = tt.customized_metric_specification[0];
    expect(resolveLocal(w, metric.metric_name)).toBe('BacklogPerWorker');
    expect(resolveLocal(w, metric.metric_name)).toBe(DEFAULT_METRIC_NAME);
    expect(resolveLocal(w, metric.namespace)).toBe(DEFAULT_NAMESPACE);
    expect(metric.metric_dimension[0]).toMatchObject({
      name: 'AutoScalingGroupName',
      value: '${local.asg_name}',
    });
    expect(w.resource.aws_autoscaling_group.worker.name).toBe('${local.asg_name}');
  });

  it('the worker environment carries what the worker reads', () => {
    expect(Object.keys(w.locals.worker_env).sort()).toEqual(
      expect.arrayContaining([
        'AWS_REGION',
        'PPSD_ASG_NAME',
        'PPSD_CACHE_DIR',
        'PPSD_DECODER',
        'PPSD_DEVICES',
        'PPSD_MODEL',
        'PPSD_S3_BUCKET',
        'PPSD_S3_PREFIX',
        'PPSD_MAX_BATCH',
        'PPSD_KV_MEMORY',
      ]),
    );
    // one variable sizes the workers' batch and the publisher's capacity arithmetic
    expect(w.locals.worker_env.PPSD_MAX_BATCH).toBe('${tostring(var.max_batch)}');
    expect(w.locals.worker_env.PPSD_KV_MEMORY).toBe('${var.kv_memory}');
    expect(mod('.').module.gpu_workers).toMatchObject({
      max_batch: '${var.worker_max_batch}',
      kv_memory: '${var.worker_kv_memory}',
    });
    expect(mod('.').variable.worker_max_batch.default).toBe(16);
    // PPSD_REDIS_URL is added at boot from SSM, never baked into user data.
    expect(strings(w.locals).join('\n')).not.toMatch(/redis_url\b(?!_parameter)/);
    expect(readFileSync(join(TF_DIR, '..', 'infra/systemd/ppsd-boot.sh'), 'utf8')).toContain(
      'PPSD_REDIS_URL=',
    );
  });

  it('the user data template only uses the variables templatefile passes', () => {
    const tpl = readFileSync(join(TF_DIR, 'modules/gpu_workers/templates/user_data.sh.tftpl'), 'utf8');
    const passed = [...(w.locals.user_data as string).matchAll(/([a-z_0-9]+)\s*=/g)].map((m) => m[1]);
    const used = new Set([...tpl.matchAll(/\$\{([a-z_0-9]+)\}/g)].map((m) => m[1]));
    for (const v of used) expect([...passed, 'k', 'v'], `template uses ${v}`).toContain(v);
    for (const v of passed)
      expect(used.has(v) || tpl.includes(`in ${v}`), `template ignores ${v}`).toBe(true);
    for (const unit of [
      'ppsd-worker.service',
      'ppsd-drain-watcher.service',
      'ppsd-boot.service',
      'ppsd-boot.sh',
    ]) {
      expect(w.locals.user_data).toContain(unit);
    }
  });

  it('the backlog publisher runs on a schedule with the same metric and target', () => {
    const pub = mod('modules/backlog_publisher');
    const fn = pub.resource.aws_lambda_function.publisher;
    expect(fn.image_config[0].command).toEqual(['lambda/autoscaler.handler']);
    expect(fn.environment[0].variables).toMatchObject({
      PPSD_METRIC_NAMESPACE: '${var.metric_namespace}',
      PPSD_METRIC_NAME: '${var.metric_name}',
      PPSD_ASG_NAME: '${var.asg_name}',
    });
    expect(pub.resource.aws_cloudwatch_event_rule.schedule.schedule_expression).toBe(
      '${var.schedule_expression}',
    );
    const call = mod('.').module.backlog_publisher;
    expect(call.metric_name).toBe('${module.gpu_workers.metric_name}');
    expect(call.target_backlog_per_worker).toBe('${var.target_backlog_per_worker}');
    expect(fn.environment[0].variables.PPSD_MAX_BATCH).toBe('${tostring(var.max_batch)}');
    expect(call.max_batch).toBe('${var.worker_max_batch}');
    expect(mod('.').module.gpu_workers.target_backlog_per_worker).toBe('${var.target_backlog_per_worker}');
    const doc = blocks(pub.data.aws_iam_policy_document.publisher, 'statement');
    const setDesired = doc.find((s) => (s.actions as string[]).includes('autoscaling:SetDesiredCapacity'));
    expect(setDesired?.resources).toEqual(['${var.asg_arn}']);
  });
});

describe('Redis for BullMQ', () => {
  it('noeviction, encryption in transit and at rest, auth token', () => {
    const r = mod('modules/redis');
    const pg = r.resource.aws_elasticache_parameter_group.this;
    expect(blocks(pg, 'parameter')).toContainEqual({ name: 'maxmemory-policy', value: 'noeviction' });
    const rg: Block = r.resource.aws_elasticache_replication_group.this;
    expect(rg).toMatchObject({
      engine: 'redis',
      at_rest_encryption_enabled: true,
      transit_encryption_enabled: true,
      auth_token: '${var.auth_token}',
      parameter_group_name: '${aws_elasticache_parameter_group.this.name}',
    });
    expect(mod('.').locals.redis_url).toMatch(/^rediss:\/\/:\$\{urlencode\(var\.redis_auth_token\)\}@/);
    expect(mod('.').resource.aws_ssm_parameter.redis_url.type).toBe('SecureString');
  });
});

describe('model bucket', () => {
  it('is versioned, encrypted and blocks public access', () => {
    const b = mod('modules/model_bucket');
    expect(b.resource.aws_s3_bucket_versioning.this.versioning_configuration[0].status).toBe('Enabled');
    const sse = b.resource.aws_s3_bucket_server_side_encryption_configuration.this;
    expect(sse.rule[0].apply_server_side_encryption_by_default[0].sse_algorithm).toBeTruthy();
    expect(b.resource.aws_s3_bucket_public_access_block.this).toMatchObject({
      block_public_acls: true,
      block_public_policy: true,
      ignore_public_acls: true,
      restrict_public_buckets: true,
    });
    expect(b.resource.aws_s3_bucket_ownership_controls.this.rule[0].object_ownership).toBe(
      'BucketOwnerEnforced',
    );
  });
});

describe('API', () => {
  it('runs the Lambda image from the same code, inside the VPC, streaming', () => {
    const api = mod('modules/api');
    const fn = api.resource.aws_lambda_function.api;
    expect(fn).toMatchObject({ package_type: 'Image', image_uri: '${var.image_uri}' });
    expect(fn.image_config[0].command).toEqual(['lambda/api.handler']);
    expect(fn.vpc_config[0].subnet_ids).toBe('${var.subnet_ids}');
    expect(Object.keys(fn.environment[0].variables).sort()).toEqual(
      [
        'NODE_OPTIONS',
        'PPSD_ADMIN_KEYS',
        'PPSD_BOOTSTRAP_KEYS',
        'PPSD_KEY_SECRET',
        'PPSD_MODELS',
        'PPSD_REDIS_URL',
      ].sort(),
    );
    expect(fn.environment[0].variables.PPSD_KEY_SECRET).toBe('${var.key_secret}');
    const root = mod('.');
    expect(root.module.api.key_secret).toBe('${var.api_key_secret}');
    expect(root.variable.api_key_secret.validation[0].condition).toContain(
      'length(var.api_key_secret) >= 32',
    );
    // the outputs say how to get the first admin key, and where the console is
    expect(root.output.first_admin_key.value).toContain('created admin key');
    expect(root.output.first_admin_key.value).toContain('${module.api.log_group_name}');
    expect(root.output.console_url.value).toBe('${module.api.url}console');
  });
});
