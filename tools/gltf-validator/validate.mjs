#!/usr/bin/env node
// Validate glTF/GLB files with the official Khronos glTF Validator (npm `gltf-validator`).
//
// Usage: node validate.mjs FILE...
// Prints one JSON document on stdout: {"validatorVersion": ..., "reports": [per-file summary]},
// where each summary carries numErrors, numWarnings, numInfos, numHints and the messages.
// Exit status: 0 when no file has errors, 1 when any file has errors (or cannot be read/parsed),
// 2 on bad usage. Warnings/infos never fail the run: the tests decide how strict to be.

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as validator from 'gltf-validator';

// Enough to diagnose a broken export without flooding the test log.
const MAX_ISSUES = 200;

/** Loads resources referenced by a .gltf (buffers/images by relative URI) from beside the file. */
function externalResourceLoader(file) {
  return async (uri) => {
    const resolved = path.resolve(path.dirname(file), decodeURIComponent(uri));
    return new Uint8Array(await readFile(resolved));
  };
}

/** A report-shaped summary for a file the validator could not even start on. */
function failureSummary(file, message) {
  return {
    file,
    numErrors: 1,
    numWarnings: 0,
    numInfos: 0,
    numHints: 0,
    truncated: false,
    messages: [{ code: 'CANNOT_VALIDATE', message: String(message), severity: 0 }],
    info: null,
  };
}

/** Validates one file and flattens the report's `issues` block next to the file name. */
async function validateFile(file) {
  let bytes;
  try {
    bytes = new Uint8Array(await readFile(file));
  } catch (err) {
    return failureSummary(file, `cannot read file: ${err.message}`);
  }
  try {
    const report = await validator.validateBytes(bytes, {
      uri: path.basename(file),
      maxIssues: MAX_ISSUES,
      writeTimestamp: false,
      externalResourceFunction: externalResourceLoader(file),
    });
    const issues = report.issues;
    return {
      file,
      numErrors: issues.numErrors,
      numWarnings: issues.numWarnings,
      numInfos: issues.numInfos,
      numHints: issues.numHints,
      truncated: issues.truncated,
      messages: issues.messages,
      info: report.info ?? null,
    };
  } catch (err) {
    // The promise rejects when the bytes are neither glTF JSON nor GLB.
    return failureSummary(file, err);
  }
}

async function main(files) {
  if (files.length === 0) {
    console.error('usage: node validate.mjs FILE...');
    return 2;
  }
  const reports = [];
  for (const file of files) {
    reports.push(await validateFile(file));
  }
  const out = { validatorVersion: validator.version(), reports };
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  return reports.some((r) => r.numErrors > 0) ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
